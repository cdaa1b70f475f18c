/* version.h - the version genred reports (`genred --version`, the man page,
 * /metrics' genred_build_info): meson's project version, which the build
 * passes as GENRED_VERSION. A build by other means reports "dev". */
#ifndef GENRED_VERSION_H
#define GENRED_VERSION_H

#ifndef GENRED_VERSION
#define GENRED_VERSION "dev"
#endif

#endif
