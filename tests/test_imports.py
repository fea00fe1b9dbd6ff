import importlib
import pkgutil

import ftcourse


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(ftcourse.__path__, "ftcourse.")]
    assert len(names) >= 10
    for name in names:
        importlib.import_module(name)
