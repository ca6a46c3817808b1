"""Build hook: compiles native/ with cffi (API mode) at install time."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
