"""The task kinds' requests: for each, how its wire message becomes a checked spec (every check done
before queueing) and its memory plan. submission.py holds the table of them by Action.
"""
