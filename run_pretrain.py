"""Pretrain a Gemma 3 language model from scratch.

    accelerate launch run_pretrain.py recipe/configs/gemma3-tiny-tinystories.yaml [--key value ...]

Every option is documented by `python run_pretrain.py --help`.
"""

from recipe.cli import run_script
from recipe.train.lifecycle import main

if __name__ == "__main__":
    run_script(main, "run_pretrain.py")
