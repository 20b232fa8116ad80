"""`python -m transformers_vargpt.training ...` = `vargpt-train ...` (handy with `accelerate launch -m`)."""

from .cli import train_main

if __name__ == "__main__":
    train_main()
