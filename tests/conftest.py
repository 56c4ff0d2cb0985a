"""Test-session settings: keep hypothesis's caches out of the working tree."""

import tempfile

from hypothesis import configuration

configuration.set_hypothesis_home_dir(tempfile.mkdtemp(prefix="nimbus-hypothesis-"))
