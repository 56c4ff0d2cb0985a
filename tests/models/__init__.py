"""Faithful, torchvision-free model definitions the tests convert and run, one file per family.

Each file ends in factory functions that build a small, seeded instance.
"""
