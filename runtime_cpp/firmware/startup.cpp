// Reset handler and vector table for the MPS2 boards under qemu-system-arm (semihosting output).
#include <cstdint>
#include <cstdlib>
extern "C" {
extern std::uint32_t __StackTop, __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__;
void initialise_monitor_handles(void);  // librdimon: semihosting stdin/stdout/stderr
void __libc_init_array(void);
int main(void);
void _init(void) {}
void _fini(void) {}
[[noreturn]] void Reset_Handler(void) {
#if defined(__ARM_FP)  // enable the FPU (CPACR CP10/CP11) before any floating-point instruction
  *reinterpret_cast<volatile std::uint32_t*>(0xE000ED88u) |= 0xFu << 20;
  __asm volatile("dsb\n isb" ::: "memory");
#endif
  for (std::uint32_t *s = &__data_load__, *d = &__data_start__; d < &__data_end__;) *d++ = *s++;
  for (std::uint32_t* d = &__bss_start__; d < &__bss_end__;) *d++ = 0;
  initialise_monitor_handles();
  __libc_init_array();
  std::exit(main());
}
[[noreturn]] void Fault_Handler(void) {  // any fault: semihosting SYS_EXIT(RunTimeErrorUnknown), qemu rc 1
  __asm volatile("movs r0, #0x18\n ldr r1, =0x20023\n bkpt 0xab" ::: "r0", "r1", "memory");
  for (;;) {}
}
}
using Handler = void (*)(void);
__attribute__((section(".isr_vector"), used)) const Handler g_vectors[16] = {reinterpret_cast<Handler>(&__StackTop),
                                                                             Reset_Handler,
                                                                             Fault_Handler,
                                                                             Fault_Handler,
                                                                             Fault_Handler,
                                                                             Fault_Handler,
                                                                             Fault_Handler,
                                                                             nullptr,
                                                                             nullptr,
                                                                             nullptr,
                                                                             nullptr,
                                                                             Fault_Handler,
                                                                             Fault_Handler,
                                                                             nullptr,
                                                                             Fault_Handler,
                                                                             Fault_Handler};
