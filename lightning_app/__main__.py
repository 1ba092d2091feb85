"""`python -m lightning_app` is the same as the `vmr` console script."""

from lightning_app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
