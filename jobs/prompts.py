"""Ray job entrypoint: SELMA stage 1 alone (same arguments as ``selma-ray prompts``)."""

import sys

from selma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prompts", *sys.argv[1:]]))
