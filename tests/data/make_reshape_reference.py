"""Write tests/data/reshape_reference.pt: the numbers the course computed before the
package was reshaped (issue 10), so tests/test_reshape_reference.py can show they did not change.

Run once on the tree *before* the reshape (it uses the old module paths)::

    PYTHONPATH=<old checkout> python tests/data/make_reshape_reference.py OUT.pt

The file holds the models' weights and the inputs too, so the test rebuilds exactly the
same models and images whatever the package's initialisation order becomes.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from vit_course.explain import METHODS, explain, explain_classes
from vit_course.metrics import (deletion_curve, insertion_curve, perturbation_test,
                                grid_pointing_score, pointing_game, relevance_mass_accuracy)
from vit_course.models import ViT
from vit_course.runtime import set_seed


def tiny_models() -> dict[str, tuple[dict, nn.Module]]:
    from torchvision.models import VisionTransformer
    set_seed(0)
    tv_cfg = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                  mlp_dim=64, num_classes=3)
    tv = VisionTransformer(**tv_cfg)
    nn.init.normal_(tv.heads.head.weight, std=0.5)
    nn.init.normal_(tv.heads.head.bias, std=0.5)
    nn.init.normal_(tv.class_token, std=0.5)
    set_seed(1)
    course_cfg = dict(img_size=32, patch_size=8, num_transformer_layers=3, embedding_dim=32,
                      mlp_size=64, num_heads=4, num_classes=3)
    course = ViT(**course_cfg)
    nn.init.normal_(course.head.weight, std=0.5)
    nn.init.normal_(course.head.bias, std=0.5)
    return {"torchvision": (tv_cfg, tv.eval()), "course": (course_cfg, course.eval())}


def main(out: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(7)
    images = torch.rand(3, 3, 32, 32, generator=g)
    # a "mask" per image: a random 12x12 square, for the localisation scores
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    for i, (y, x) in enumerate([(2, 4), (10, 12), (16, 3)]):
        masks[i, y:y + 12, x:x + 12] = True
    ref: dict = {"images": images, "masks": masks, "models": {}, "maps": {}, "classes": {},
                 "metrics": {}}
    options = {
        "rollout": [{}, {"discard_ratio": 0.9, "head_fusion": "max"},
                    {"discard_ratio": 0.5, "head_fusion": "min", "start_layer": 1}],
        "grad_rollout": [{}, {"discard_ratio": 0.9}],
        "attention": [{}, {"layer": 0, "head": 1}],
        "smoothgrad": [{"n_samples": 4}],
        "integrated_gradients": [{"steps": 8}],
    }
    for kind, (cfg, model) in tiny_models().items():
        ref["models"][kind] = {"config": cfg, "state_dict": model.state_dict()}
        for name in sorted(METHODS):
            for i, opts in enumerate(options.get(name, [{}])):
                for target in (None, 1):
                    key = f"{kind}/{name}/{i}/{target}"
                    ref["maps"][key] = {"options": opts, "target": target,
                                        "maps": explain(model, images, name, target=target,
                                                        **opts).detach()}
        ref["classes"][kind] = explain_classes(model, images, "grad_rollout", chunk_size=2)
        maps = ref["maps"][f"{kind}/grad_rollout/0/None"]["maps"]
        m = {}
        for baseline in ("blur", "mean", "zero"):
            m[f"deletion/{baseline}"] = deletion_curve(model, images, maps, steps=8,
                                                       baseline=baseline, progress=False)
            m[f"insertion/{baseline}"] = insertion_curve(model, images, maps, steps=8,
                                                         baseline=baseline, progress=False)
        pt = perturbation_test(model, images, maps, labels=[0, 1, 2], progress=False)
        for k, v in pt.items():
            if isinstance(v, torch.Tensor) and "auc" not in k:
                m[f"chefer/{k}"] = v
        grid_maps = torch.rand(3, 8, 8, generator=g)
        m["grid_pointing"] = grid_pointing_score(grid_maps, torch.tensor([0, 1, 3]))
        ref.setdefault("grid_maps", {})[kind] = grid_maps
        m["pointing_game"] = pointing_game(maps, masks)
        m["relevance_mass_accuracy"] = relevance_mass_accuracy(maps, masks)
        ref["metrics"][kind] = m
    torch.save(ref, out)
    print(f"wrote {out}: {len(ref['maps'])} maps, "
          f"{sum(len(v) for v in ref['metrics'].values())} metric values")


if __name__ == "__main__":
    main(sys.argv[1])
