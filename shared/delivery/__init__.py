"""Completion delivery: live job events for Server-Sent Events, and signed webhooks.

Both start inside the job store's Lua scripts (``shared/delivery/lua.py``): every change
of a job publishes a small event on the job's channel, and a job's final change
schedules its webhook in the same atomic step, so no completion is ever missed.
"""
