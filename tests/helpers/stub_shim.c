/* stub_shim.c - an empty library named libdynshim.so, preloaded by the
 * supervision tests through DYNSHIM_LIBRARY so that they do not depend on
 * the real shim being built. */
int dynshim_stub_loaded = 1;
