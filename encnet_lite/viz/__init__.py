"""Figures the chapters draw, one module per topic; each function draws what it is given.

- :mod:`.data`: dataset samples, class frequencies, how a ContextScenes image is built;
- :mod:`.encoding`: soft assignments to codewords, the encoding layer's benchmark;
- :mod:`.context`: receptive fields, context schemes, gates gamma, encoded context, presence;
- :mod:`.codewords`: codeword maps on images, codeword usage per class;
- :mod:`.results`: predictions, confusion matrices, training curves, the ablation;
- :mod:`.diagrams`: EncNet's architecture and the Context Encoding Module's data flow,
  with shapes traced from the model;
- :mod:`.pretrained`: the official evaluation's views and windows, codeword maps on
  images of any size, a segmented photo with its class legend;
- :mod:`.widgets`: ipywidgets explorers; :mod:`.tables`: Markdown tables;
- :mod:`.style`: the figure convention (column width, font sizes), applied on import.

Each function returns a matplotlib figure; chapters call it plainly (a static figure for
the built site) and may wrap it in ``ipywidgets.interact``. Statistics (means over seeds,
codeword usage) come from the library modules they belong to, never from here.
"""

from .codewords import (
    plot_class_codewords,
    plot_codeword_health,
    plot_codeword_maps,
    plot_codeword_usage,
    plot_winner_maps,
)
from .context import (
    plot_context_schemes,
    plot_embedding_2d,
    plot_encnet_outputs,
    plot_gamma_heatmap,
    plot_gate_forms,
    plot_loss_share,
    plot_output_strides,
    plot_presence,
    plot_presence_predictions,
    plot_receptive_field,
)
from .data import (
    add_class_legend,
    plot_class_frequency,
    show_samples,
    show_scene_construction,
    to_rgb,
)
from .diagrams import plot_context_encoding_pipeline, plot_encnet_architecture
from .encoding import (
    encoding_benchmark_tables,
    norm_sweep_table,
    plot_assignment_map,
    plot_encoding_benchmark,
    plot_smoothing_sweep,
    variant_usage_table,
)
from .pretrained import plot_codeword_winners, plot_official_views, plot_segmentation
from .results import (
    plot_ablation,
    plot_confusion,
    plot_history,
    plot_k_sweep,
    plot_lookalike_sweep,
    plot_per_class_iou,
    show_predictions,
)
from .style import COLUMN_INCHES, apply_style, subplots
from .tables import markdown_table, text_table
from .widgets import codeword_explorer

apply_style()  # the figure convention (viz/style.py) as matplotlib's defaults

__all__ = [
    "COLUMN_INCHES", "apply_style", "subplots",
    "add_class_legend", "codeword_explorer", "markdown_table", "plot_ablation",
    "plot_lookalike_sweep",
    "plot_codeword_winners", "plot_official_views", "plot_segmentation",
    "plot_assignment_map", "plot_class_frequency", "plot_codeword_health", "plot_codeword_maps",
    "plot_codeword_usage", "plot_class_codewords", "plot_winner_maps",
    "plot_confusion", "plot_context_encoding_pipeline", "plot_context_schemes",
    "plot_embedding_2d", "plot_encnet_architecture", "plot_encnet_outputs",
    "plot_encoding_benchmark", "plot_gamma_heatmap", "plot_gate_forms", "plot_history",
    "plot_k_sweep", "plot_loss_share", "plot_output_strides", "plot_per_class_iou",
    "plot_presence", "plot_presence_predictions", "plot_receptive_field", "plot_smoothing_sweep",
    "show_predictions", "show_samples", "show_scene_construction", "to_rgb",
    "encoding_benchmark_tables",
    "norm_sweep_table", "text_table", "variant_usage_table",
]
