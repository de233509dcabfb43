"""Local runs only: private PostgreSQL and Redis, and the supervisor behind `postroom run`, the tests and `make bench`. No service imports this package."""
