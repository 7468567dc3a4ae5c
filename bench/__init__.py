"""The benchmark: what the relay costs against the simulator read directly (not part of the test suite)."""
