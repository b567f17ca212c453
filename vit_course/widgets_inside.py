"""The explorer's "inside" view (notebook 07): for the image an :class:`AttentionExplorer`
shows, the token norms after its ``layer`` on the patch grid and the logit lens (per-block
class probabilities).

One recorded forward pass per image (:func:`vit_course.inside.record_inside`, beside the
explorer's own capture, which does not keep the residual stream), kept: moving the layer, or
back to an image seen before, redraws from that record with no model pass::

    explorer = AttentionExplorer(model, images, class_names)
    InsideView(explorer)          # displays below the explorer; follows its image and layer
"""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from torch import Tensor

from .inside import layer_logits, record_inside, token_norms
from .viz_inside import plot_inside_view
from .widgets import AttentionExplorer


class InsideView:
    """Token norms and the logit lens of the explorer's selected image.

    Args:
        explorer: the explorer to follow (its model, images, class names, image and layer).
        threshold: patches whose norm exceeds ``threshold`` × the median patch norm of that
            image and layer are outlined (high-norm tokens, Darcet et al. 2023).

    Attributes:
        records: image index → (norms (L, N) of the patch tokens, probs (L, K)).
        forward_passes: how many model passes the view has made (one per image shown).
        widget: the ``ipywidgets.VBox`` shown in the notebook.
    """

    def __init__(self, explorer: AttentionExplorer, threshold: float = 4.0):
        if not isinstance(explorer, AttentionExplorer):
            raise TypeError(f"InsideView follows an AttentionExplorer, got "
                            f"{type(explorer).__name__}; build one with "
                            f"AttentionExplorer(model, images, class_names)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or threshold <= 1:
            raise ValueError(f"threshold must be a number > 1 (times the median norm), "
                             f"got {threshold!r}")
        self.explorer, self.threshold = explorer, float(threshold)
        self.records: dict[int, tuple[Tensor, Tensor]] = {}
        self.forward_passes = 0
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="760px"))
        self.image.add_class("vitc-inside")
        self.caption = widgets.HTML()
        self.widget = widgets.VBox([self.caption, self.image])
        for name in ("image", "layer"):
            explorer.controls[name].observe(self.redraw, names="value")
        self.redraw()

    def record(self, index: int) -> tuple[Tensor, Tensor]:
        """(norms (L, N), probs (L, K)) of image ``index``, recorded once."""
        if index not in self.records:
            ex = self.explorer
            model = ex.cache.model
            ex.wait()           # the explorer's own pass of a new image runs on the same model
            cap = record_inside(model, ex.images[index:index + 1])
            self.forward_passes += 1
            P = cap.info.num_prefix_tokens
            norms = token_norms(model, capture=cap).norms[0, :, P:]
            probs = layer_logits(model, cap)[0].softmax(-1)
            self.records[index] = (norms, probs)
        return self.records[index]

    def redraw(self, _change: Any = None) -> None:
        """Draw the selected image's view (a model pass only for an image not seen yet)."""
        ex, s = self.explorer, self.explorer.state()
        norms, probs = self.record(s["image"])
        L = norms.shape[0]
        layer = s["layer"] % L
        h, w = ex.info.grid(*ex.images.shape[-2:])
        grid = norms[layer].reshape(h, w)
        fig = plot_inside_view(ex.raw_images[s["image"]], grid, probs, ex.class_names,
                               layer=layer, threshold=self.threshold * float(grid.median()))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
        plt.close(fig)
        self.image.value = buf.getvalue()
        top = probs[layer].argmax().item()
        self.caption.value = (f"<b>inside the ViT</b>: {ex.titles[s['image']]}, after block "
                              f"{layer + 1} of {L}: the lens reads "
                              f"<i>{ex.class_names[top]}</i> ({probs[layer, top]:.2f}); "
                              f"outlined: norms over {self.threshold:g}× the median")

    def _ipython_display_(self) -> None:
        display(self.widget)
