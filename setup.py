"""Build script. The custom ops in csrc/ (asl._C) are added here by the ops issue; until
then the package is pure Python and the ops fall back to asl/reference.py."""
from setuptools import setup

setup()
