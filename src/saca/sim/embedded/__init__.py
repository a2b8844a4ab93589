"""Embedded backend: procedurally generated houses rendered with pybullet's TinyRenderer on CPU."""
