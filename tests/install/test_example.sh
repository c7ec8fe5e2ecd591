#!/bin/sh
# Adopting libgodwit from the outside: install the build into a scratch
# DESTDIR, build examples/toyvmm.c against it the way a VMM author would
# (the installed headers and the flags pkg-config gives, nothing from this
# checkout) and run it. Every step must succeed.
#
# From tests/install/meson.build, in the environment: MESON, BUILD_ROOT,
# SOURCE_ROOT, WORK (a scratch directory, emptied first), LIBDIR and
# INCLUDEDIR (absolute, as installed), CC, SANITIZE (the -fsanitize= the
# library was built with, which a program linking it needs too, or
# empty), and CXX (a C++ compiler of the same family, or empty).
set -eu

say() { echo "test_example: $*"; }
die() { echo "test_example: FAILED: $*" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK"
dest=$WORK/destdir

say "meson install --destdir $dest"
"$MESON" install -C "$BUILD_ROOT" --no-rebuild --quiet --destdir "$dest" >"$WORK/install.log" 2>&1 ||
	{ cat "$WORK/install.log" >&2; die "meson install"; }
for h in "$SOURCE_ROOT"/include/godwit/*.h; do
	[ -f "$dest$INCLUDEDIR/godwit/${h##*/}" ] ||
		die "<godwit/${h##*/}> is not installed: add it to include/godwit/meson.build"
done

# pkg-config reads the installed godwit.pc and puts DESTDIR in front of
# its paths (and of those of jansson.pc, read for Requires.private), as
# if it had been installed for real.
export PKG_CONFIG_PATH="$dest$LIBDIR/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$dest"
cflags=$(pkg-config --cflags godwit) || die "pkg-config --cflags godwit"
libs=$(pkg-config --libs godwit) || die "pkg-config --libs godwit"
version=$(pkg-config --modversion godwit) || die "pkg-config --modversion godwit"
say "pkg-config --cflags --libs godwit: $cflags $libs"
for flag in $cflags $libs; do
	case $flag in
	-I"$dest"/* | -L"$dest"/*) ;;
	-I* | -L*) die "pkg-config gives $flag, which is not a path of the installed copy" ;;
	esac
done

# Strict C11 and warnings as errors: what a VMM's own build may use.
strict="-std=c11 -Wall -Wextra -Wpedantic -Werror"
for h in "$dest$INCLUDEDIR"/godwit/*.h; do
	printf '#include <godwit/%s>\nint probe;\n' "${h##*/}" |
		$CC $strict $cflags -fsyntax-only -x c - ||
		die "<godwit/${h##*/}> does not compile on its own"
done

say "cc toyvmm.c \$(pkg-config --cflags --libs godwit)"
$CC $SANITIZE $strict -o "$WORK/toyvmm" "$SOURCE_ROOT/examples/toyvmm.c" $cflags $libs ||
	die "the example does not build against the installed library"

export LD_LIBRARY_PATH="$dest$LIBDIR"
ldd "$WORK/toyvmm" | grep -q "libgodwit.so.0 => $dest/" ||
	die "toyvmm does not load the installed libgodwit.so.0: $(ldd "$WORK/toyvmm" | grep godwit)"
out=$("$WORK/toyvmm" "$WORK/toy.gw") || die "toyvmm failed"
echo "$out"
case $out in
*"libgodwit $version:"*) ;;
*) die "gw_version() does not say $version, the version of godwit.pc" ;;
esac

# The headers in C++: extern "C" keeps the names unmangled, so this links.
if [ -n "$CXX" ]; then
	say "the headers from C++"
	printf '#include <godwit/godwit.h>\nint main() { return gw_version()[0] == 0; }\n' \
		>"$WORK/cxx.cc"
	$CXX $SANITIZE -std=c++11 -Wall -Wextra -Werror -o "$WORK/cxx" "$WORK/cxx.cc" \
		$cflags $libs || die "a C++ program does not build against the installed library"
	"$WORK/cxx" || die "the C++ program failed"
else
	say "no C++ compiler of the same family: the headers were not tried from C++"
fi
say "passed"
