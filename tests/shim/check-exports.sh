#!/bin/sh
# check-exports.sh LIB - libdynshim.so needs nothing beyond glibc (no libpq)
# and exports only libpq entry points and the dlsym/dlopen hooks.
set -u
lib=$1
fail=0
needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for n in $needed; do
	case $n in
	libc.so.* | libasan.so.* | libubsan.so.* | libm.so.* | libgcc_s.so.* | ld-linux*) ;;
	*) echo "FAIL: $lib needs $n" >&2; fail=1 ;;
	esac
done
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v -e '^PQ' -e '^lo_' -e '^dlsym$' -e '^dlopen$' -e '^socket$' -e '^close$')
if [ -n "$bad" ]; then
	echo "FAIL: $lib exports more than the interposed names:" $bad >&2
	fail=1
fi
echo "needed: $needed; exports: $(nm -D --defined-only "$lib" | wc -l) names"
exit $fail
