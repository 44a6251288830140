"""``python -m cxrnet.serve checkpoint=<model> ...``: see :mod:`cxrnet.serve.run` and ``conf/serve.yaml``."""

from cxrnet.serve.run import main

if __name__ == "__main__":
    main()
