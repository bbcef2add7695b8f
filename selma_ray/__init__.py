"""selma-ray: SELMA (skill-specific expert learning and merging with auto-generated data) on Ray.

The five SELMA steps are the package's architecture: ``prompts`` (stage 1), ``images``
(stage 2), ``training`` (stage 3), ``merging`` (stage 4) and ``evaluation`` (stage 5). Each
step's core runs without Ray; ``selma_ray.distributed`` maps it onto Ray Data / Train / Serve.
"""

__version__ = "0.1.0"
