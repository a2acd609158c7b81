"""Training: model registry, COCO dataset reader, transforms, DDP loop, checkpoints."""
