/* Decode one window of a JPEG straight into a caller's buffer, optionally mirrored.
 *
 * AlexNet's training crop keeps 227x227 of a 256-px-high image: libjpeg-turbo can skip the rows
 * above and below the window (jpeg_skip_scanlines: entropy decoding only, no IDCT, upsampling or
 * colour conversion) and run the IDCT only for the iMCU columns the window touches
 * (jpeg_crop_scanline). simplejpeg decodes whole images only. The pixels are the ones a whole
 * decode gives (accurate integer IDCT, fancy upsampling, as simplejpeg's defaults); the tests
 * check that against simplejpeg.
 *
 * Warnings (a truncated or corrupt stream that libjpeg would pad with grey) are errors, as in
 * simplejpeg's strict mode, wherever in the image they are: the rows below the window are
 * entropy-decoded too (skipping straight to the end would not read them), then the end marker.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_mgr *err = (struct error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) on_error(cinfo); /* a warning: corrupt data */
}

/* 0 on success; otherwise -1 with `message` set. Runs without the GIL. */
static int decode_window(const unsigned char *data, size_t size, unsigned char *out, int top, int left,
                         int height, int width, int flip, char *message) {
    struct jpeg_decompress_struct cinfo;
    struct error_mgr err;
    unsigned char *volatile row = NULL; /* volatile: read after longjmp */
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        strncpy(message, err.message, JMSG_LENGTH_MAX);
        free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    if (top < 0 || left < 0 || (JDIMENSION)(top + height) > cinfo.output_height ||
        (JDIMENSION)(left + width) > cinfo.output_width) {
        snprintf(message, JMSG_LENGTH_MAX, "window %dx%d at (%d, %d) outside the %ux%u image", width, height, left,
                 top, cinfo.output_width, cinfo.output_height);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    /* One column more on each side: fancy upsampling at a cropped edge replicates the edge pixel
     * where a whole decode has a neighbour, so the window's own edge columns must not be an edge. */
    int from = left > 0 ? left - 1 : 0;
    int to = left + width < (int)cinfo.output_width ? left + width + 1 : left + width;
    JDIMENSION x = (JDIMENSION)from, w = (JDIMENSION)(to - from);
    jpeg_crop_scanline(&cinfo, &x, &w); /* widens it to whole iMCU columns: x <= from */
    row = malloc((size_t)cinfo.output_width * 3);
    if (row == NULL) {
        snprintf(message, JMSG_LENGTH_MAX, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    if (top > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)top) != (JDIMENSION)top) {
        snprintf(message, JMSG_LENGTH_MAX, "could not skip %d rows", top);
        free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    for (int r = 0; r < height; r++) {
        JSAMPROW line = row;
        jpeg_read_scanlines(&cinfo, &line, 1);
        const unsigned char *src0 = row + (size_t)(left - (int)x) * 3;
        unsigned char *dst = out + (size_t)r * width * 3;
        if (!flip) {
            memcpy(dst, src0, (size_t)width * 3);
        } else {
            const unsigned char *src = src0 + (size_t)(width - 1) * 3;
            for (int c = 0; c < width; c++, dst += 3, src -= 3) {
                dst[0] = src[0];
                dst[1] = src[1];
                dst[2] = src[2];
            }
        }
    }
    /* The rest of the stream, for its errors: skip to the last row (skipping to the end returns
     * at once without reading), read that row, then up to the end marker. */
    JDIMENSION last = cinfo.output_height - 1;
    if (cinfo.output_scanline < last) jpeg_skip_scanlines(&cinfo, last - cinfo.output_scanline);
    if (cinfo.output_scanline == last) {
        JSAMPROW line = row;
        jpeg_read_scanlines(&cinfo, &line, 1);
    }
    jpeg_finish_decompress(&cinfo);
    free(row);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

static PyObject *decode_into(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    int top, left, height, width, flip;
    if (!PyArg_ParseTuple(args, "y*w*iiiip:decode_into", &data, &out, &top, &left, &height, &width, &flip))
        return NULL;
    PyObject *result = NULL;
    char message[JMSG_LENGTH_MAX] = "";
    if (height <= 0 || width <= 0 || out.len != (Py_ssize_t)height * width * 3) {
        PyErr_Format(PyExc_ValueError, "out holds %zd bytes, not %d x %d x 3", out.len, height, width);
    } else {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = decode_window(data.buf, (size_t)data.len, out.buf, top, left, height, width, flip, message);
        Py_END_ALLOW_THREADS
        if (rc == 0) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            PyErr_SetString(PyExc_ValueError, message);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_into", decode_into, METH_VARARGS,
     "decode_into(data, out, top, left, height, width, flip)\n\n"
     "Decode the height x width window at (top, left) of JPEG `data` as RGB into `out`, a writable\n"
     "C-contiguous buffer of height*width*3 bytes, mirrored left-right if `flip`. Raises ValueError\n"
     "for corrupt or truncated data, a window outside the image, or an unsupported colour space."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop", "Windowed JPEG decoding (libjpeg-turbo).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) { return PyModule_Create(&module); }
