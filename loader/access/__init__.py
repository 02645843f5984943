"""Dashboard access: users and their roles, logins and sessions, and the log of what operators did."""
