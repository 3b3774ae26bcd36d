"""dist_face: distributed large-scale face-recognition training."""
