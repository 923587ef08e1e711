"""The studies: one module each, each ending with one :class:`~interp_tl.studies.base.Study` record.

To add a study: write ``studies/<name>.py`` with a frozen config dataclass (its ``Attributes:``
docstring is the CLI's help), ``run``, ``plot``, ``headline`` and a ``STUDY`` record, and list it
in :data:`STUDIES`. The CLI, ``interp-tl all``, the report and the index read everything else from
the record.
"""

from __future__ import annotations

from interp_tl.studies import alignment, embedding, heads, jacobian, layers, lens, surgery
from interp_tl.studies.alignment import AlignmentConfig, run_alignment
from interp_tl.studies.base import Study
from interp_tl.studies.embedding import EmbeddingConfig, run_embedding
from interp_tl.studies.heads import HeadsConfig, head_report, run_heads
from interp_tl.studies.jacobian import JacobianConfig, run_jacobian
from interp_tl.studies.layers import LayersConfig, run_layers
from interp_tl.studies.lens import LensConfig, run_lens
from interp_tl.studies.surgery import SurgeryConfig, run_surgery

#: name -> record, in the order ``interp-tl all`` runs them.
STUDIES: dict[str, Study] = {
    record.name: record
    for record in (alignment.STUDY, embedding.STUDY, surgery.STUDY, layers.STUDY, jacobian.STUDY, heads.STUDY,
                   lens.STUDY)
}

__all__ = [
    "STUDIES", "AlignmentConfig", "EmbeddingConfig", "HeadsConfig", "JacobianConfig", "LayersConfig", "LensConfig",
    "Study", "SurgeryConfig", "head_report", "run_alignment", "run_embedding", "run_heads", "run_jacobian",
    "run_layers", "run_lens", "run_surgery",
]
