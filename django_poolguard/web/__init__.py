"""The web surface's machinery: the admin dashboard's data and the health answer."""
