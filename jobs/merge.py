"""Ray job entrypoint: stage 4 alone (same arguments as ``selma-ray merge``)."""

import sys

from selma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
