"""Interactive explorers (ipywidgets). On the static site they show their first view;
in a live kernel the sliders redraw."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .codewords import plot_codeword_maps


def codeword_explorer(images: torch.Tensor, masks: torch.Tensor, assignments: torch.Tensor,
                      palette, image: int = 0, codeword: int = 0, opacity: float = 0.6):
    """An ipywidgets explorer over :func:`plot_codeword_maps`: image, codeword, opacity.

    The sliders start at ``image``, ``codeword`` and ``opacity`` (those of the static figure
    shown before it). On the static site it shows its first view; in a live kernel the
    sliders redraw.
    """
    import ipywidgets as widgets

    start = (image, codeword, opacity)  # show() below shadows the names

    def show(image: int = 0, codeword: int = 0, opacity: float = 0.6):
        fig = plot_codeword_maps(images[image], assignments[image], masks[image], palette,
                                 code=codeword, alpha=opacity)
        plt.show()
        return fig

    return widgets.interact(
        show,
        image=widgets.IntSlider(start[0], 0, len(images) - 1, description="image"),
        codeword=widgets.IntSlider(start[1], 0, assignments.shape[-1] - 1,
                                   description="codeword"),
        opacity=widgets.FloatSlider(start[2], min=0.0, max=1.0, step=0.1,
                                    description="opacity"),
    )
