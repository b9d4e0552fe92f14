/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * abi.h — THE kernel/user ABI of moat.
 *
 * Included by every bpf/<family>/<family>.bpf.c: an umbrella over one part per
 * family in abi/ (count.h, fw.h, lb.h; sec.h joins them the same way).
 * Mirrored in Rust by crates/moat-abi (src/count.rs, src/fw.rs: same names,
 * same layout); a test without root checks the mirror against the compiled
 * objects (map key/value sizes, struct field offsets from BTF, names present,
 * names <= 15 characters) and every #define here against its Rust constant.
 *
 * Rules: fixed-width types only, explicit padding, network byte order spelled
 * in the type (__be16/__be32), no bool/bitfields/pointers/enum-typed fields.
 * Program and map names are #defines here and constants in moat-abi; the
 * kernel keeps only 15 characters of a name, so every name fits in 15.
 */
#ifndef MOAT_ABI_H
#define MOAT_ABI_H

#include <linux/types.h>

#include "abi/count.h"
#include "abi/fw.h"
#include "abi/lb.h"
#include "abi/sec.h"

#endif /* MOAT_ABI_H */
