"""``python upload.py SOURCE... --bucket B``: bulk load images into S3 and image_info (see --help); the same
as ``visionstream upload SOURCE...``."""

import sys

from visionstream.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["upload", *sys.argv[1:]]))
