"""The thin Ray layer: Ray Data stages, the Ray Train launcher, the Ray runtime for a run.

Nothing outside this package imports Ray at module level: the stage cores run without it.
"""
