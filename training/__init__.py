"""libra-rcnn training: configs, data, models, trainer and evaluation (needs torch)."""
