"""vit_course: helper package for the Vision Transformer explainability course.

Modules (each holds one thing):

- ``runtime``   seeds, device, course profile (quick / full), paths
- ``data``      dataset download and verification, transforms, loaders, synthetic data
- ``models``    the ViT built from scratch (course model)
- ``pretrained``torchvision ViT-B/16 transfer learning, feature cache
- ``engine``    train / test loops, evaluation, checkpoints
- ``explain``   attention capture and explanation methods (one call shape)
- ``metrics``   quantitative evaluation of explanations
- ``viz``       plotting (takes finished arrays, returns figures)
- ``widgets``   ipywidgets explorers (wiring only)
- ``grading``   exercise checks and the batch grader
"""

__version__ = "0.1.0"
