"""Ray job entrypoint: the images stage alone (as ``selma-ray run --stages images``)."""

import sys

from selma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--stages", "images", *sys.argv[1:]]))
