"""A minimal FL platform on Django that notifies its clients with flnotify."""
