/* npy.h - write and read float32 arrays as NumPy .npy files (format 1.0).
 *
 * Only what genred needs: little-endian float32, C order, up to 4 dims. Used
 * by `genred features` (training reads genred's own features) and the test
 * tools. */
#ifndef GENRED_NPY_H
#define GENRED_NPY_H

#include <stddef.h>

#include "genred/err.h"

/* Writes data (shape[0]*...*shape[ndim-1] floats) to path. */
int npy_write(const char *path, const float *data, const size_t *shape,
              int ndim, gr_err *err);

/* Reads a float32 C-order array. *data is malloc'd (caller frees); shape
 * receives up to 4 dims, *ndim their count. */
int npy_read(const char *path, float **data, size_t shape[4], int *ndim,
             gr_err *err);

#endif
