# cffi's build hook has no pyproject.toml spelling; everything else lives there.
from setuptools import setup

setup(cffi_modules=["cext/build_cffi.py:ffibuilder"])
