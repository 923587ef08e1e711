"""interp_tl: cross-lingual interpretability studies on TransformerLens HookedTransformer models.

Data flows one way: model (:mod:`interp_tl.models`) -> prompts (:mod:`interp_tl.prompts`) ->
activations (:mod:`interp_tl.activations`) -> statistics (:mod:`interp_tl.stats`) -> study
(:mod:`interp_tl.studies`) -> report and CLI (:mod:`interp_tl.report`, :mod:`interp_tl.cli`).
"""

__version__ = "0.1.0"
