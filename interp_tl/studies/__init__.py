"""One module per study; each composes prompts -> activations -> statistics into a StudyResult.

To add a study: write ``studies/<name>.py`` with a frozen ``<Name>Config`` dataclass and
``run_<name>(model, config, progress=False, keep_activations=False) -> StudyResult``, register
it in :data:`STUDIES`, add its plot to ``interp_tl/report.py`` and its flags to ``interp_tl/cli.py``.
"""

from __future__ import annotations

from interp_tl.studies.alignment import AlignmentConfig, run_alignment
from interp_tl.studies.common import StudyResult
from interp_tl.studies.embedding import EmbeddingConfig, run_embedding
from interp_tl.studies.heads import HeadsConfig, run_heads
from interp_tl.studies.jacobian import JacobianConfig, run_jacobian
from interp_tl.studies.layers import LayersConfig, run_layers
from interp_tl.studies.surgery import SurgeryConfig, run_surgery

#: name -> (config class, run function), in the order ``interp-tl all`` runs them.
STUDIES = {
    "alignment": (AlignmentConfig, run_alignment),
    "embedding": (EmbeddingConfig, run_embedding),
    "surgery": (SurgeryConfig, run_surgery),
    "layers": (LayersConfig, run_layers),
    "jacobian": (JacobianConfig, run_jacobian),
    "heads": (HeadsConfig, run_heads),
}

__all__ = [
    "STUDIES", "AlignmentConfig", "EmbeddingConfig", "HeadsConfig", "JacobianConfig", "LayersConfig", "StudyResult",
    "SurgeryConfig", "run_alignment", "run_embedding", "run_heads", "run_jacobian", "run_layers", "run_surgery",
]
