"""Generation backends behind one interface (see :mod:`inpars_ray.backends.base`)."""
