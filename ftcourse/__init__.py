"""ftcourse: fine-tuning LLMs from scratch, each method proven equal to the library people use.

Start with `model, tokenizer = ftcourse.load_base()`: the tiny pretrained Llama that ships with
the package (or, on a GPU profile, a real model). The modules follow the book's chapters.
"""

from ftcourse.models import load_base
from ftcourse.profiles import get_profile

__version__ = "0.1.0"
__all__ = ["__version__", "get_profile", "load_base"]
