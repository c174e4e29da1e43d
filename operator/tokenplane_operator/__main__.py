"""`python -m tokenplane_operator operator [-n NS | -A]`, and `uninstall-check`: the chart's operator and hook."""

from tokenplane_operator.main import operator_app

operator_app()
