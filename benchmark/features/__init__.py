"""Backbone outputs a method consumes: backbones (registry ``BACKBONES``), the image
transforms, and the frozen regime's on-disk feature cache."""
