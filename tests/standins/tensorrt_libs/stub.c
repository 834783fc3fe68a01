/* TEST DOUBLE, not TensorRT.  See README.md next to this file.
 *
 * Stand-ins for the C entry points that TensorRT's Python bindings (the pybind11 module
 * tensorrt_bindings/tensorrt.so of the tensorrt-cu12-bindings wheels) link against in
 * libnvinfer.so.N, libnvinfer_plugin.so.N and libnvonnxparser.so.N.  Every function returns
 * NULL / 0 / false: nothing can be built, loaded, run or timed with them.  They exist only so
 * the bindings module can be imported on a machine without TensorRT's native libraries and its
 * classes, enums, methods and pybind11 signatures read (tests/unit/latency/test_trt_api.py).
 *
 * One source, three libraries: compile with exactly one of -DSTUB_NVINFER, -DSTUB_PLUGIN,
 * -DSTUB_ONNXPARSER and give each the soname the wheel's NEEDED entries name, e.g.
 *   gcc -shared -fPIC -DSTUB_NVINFER     -Wl,-soname,libnvinfer.so.10        -o libnvinfer.so.10        stub.c
 *   gcc -shared -fPIC -DSTUB_PLUGIN      -Wl,-soname,libnvinfer_plugin.so.10 -o libnvinfer_plugin.so.10 stub.c
 *   gcc -shared -fPIC -DSTUB_ONNXPARSER  -Wl,-soname,libnvonnxparser.so.10   -o libnvonnxparser.so.10   stub.c
 * The signatures only need to resolve at load time (the bindings reference the symbols
 * unversioned); the argument lists mirror NvInfer.h / NvOnnxParser.h loosely.
 */
#include <stddef.h>
#include <stdint.h>

#if defined(STUB_NVINFER)
void *createInferBuilder_INTERNAL(void *logger, int32_t version) { (void)logger; (void)version; return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int32_t version) { (void)logger; (void)version; return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int32_t version) { (void)engine; (void)logger; (void)version; return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int32_t capability) { (void)capability; return NULL; }
int32_t getInferLibVersion(void) { return 0; }
#elif defined(STUB_PLUGIN)
_Bool initLibNvInferPlugins(void *logger, const char *ns) { (void)logger; (void)ns; return 0; }
#elif defined(STUB_ONNXPARSER)
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int32_t version) { (void)network; (void)logger; (void)version; return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int32_t version) { (void)refitter; (void)logger; (void)version; return NULL; }
int32_t getNvOnnxParserVersion(void) { return 0; }
#else
#error "compile with one of -DSTUB_NVINFER, -DSTUB_PLUGIN, -DSTUB_ONNXPARSER"
#endif
