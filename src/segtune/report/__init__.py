"""Pictures for users: colourised masks, overlays, triptychs, training curves, bar charts."""

from .plots import (
    colorize,
    default_palette,
    overlay,
    plot_comparison,
    plot_curves,
    plot_per_class,
    save_mask_png,
    save_triptych,
)

__all__ = [
    "colorize",
    "default_palette",
    "overlay",
    "plot_comparison",
    "plot_curves",
    "plot_per_class",
    "save_mask_png",
    "save_triptych",
]
