/* pqmod.c - a module linked against a libpq (the system one or a renamed
 * copy), opened by the test driver with dlopen like a Python C extension:
 * its libpq is a dependency of a module, not of the program. */
#include "pqapi.h"

PQAPI_DEFINE(pqmod_api)
