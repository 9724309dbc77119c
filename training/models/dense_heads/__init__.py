"""Dense (per-anchor) heads: the RPN of Faster R-CNN and the RetinaNet head."""
