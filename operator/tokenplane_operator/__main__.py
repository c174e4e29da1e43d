"""`python -m tokenplane_operator operator [-n NS | -A]`: the operator process, as the chart starts it."""

from tokenplane_operator.main import operator_app

operator_app()
