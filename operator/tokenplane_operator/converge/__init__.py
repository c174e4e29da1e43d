"""Desired against observed: the actions to take, the status to report and the economics from scrapes, pure."""
