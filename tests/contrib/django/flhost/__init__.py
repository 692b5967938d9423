"""A Django FL server as the original platform is shaped, for flnotify's Django tests.

Trainings point at a global model that carries the round, states are one-letter choices,
users (with a ``message_endpoint``) take part through a many-to-many field.
"""
