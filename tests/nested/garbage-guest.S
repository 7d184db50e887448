/*
 * A hostile guest for the nested `garbage` check: a bare PVH "kernel" (32-bit protected
 * mode, paging off, no Linux) that attacks hull-vmm's virtio-mmio devices. The guest
 * kernel has no /dev/mem, so this is how a guest gets raw access to the registers and to
 * the memory the queues live in.
 *
 * Each of ROUNDS rounds, for each device slot at 0xd0000000 + n * 0x1000 (n < DEVICES):
 *   - drives the status handshake (ACK, DRIVER, the offered features, FEATURES_OK), points
 *     every queue at a random page of the 256 KiB garbage region at 16 MiB (in RAM, so the
 *     transport accepts it and the device starts on it) and sets DRIVER_OK. After the
 *     first round the device is active and ignores this, as designed;
 *   - writes RANDOM_WRITES random values to random registers (QueueNotify with any index,
 *     status, selectors, config space, ...).
 * Then it fills the garbage region with descriptor-shaped noise (addresses mostly inside
 * 16..32 MiB, sometimes above 4 GiB; lengths mostly < 64 KiB, sometimes any; random
 * NEXT/WRITE/INDIRECT flags and next indexes) -- which is also where the avail and used
 * rings are -- and notifies every queue of every device.
 *
 * It prints "GARBAGE-START" and "GARBAGE-END" on COM1 and then triple-faults (an empty
 * IDT and int3), which hull-vmm reports as a guest reset. Build: see build.sh.
 */
#define ROUNDS 300
#define DEVICES 3
#define RANDOM_WRITES 8
#define REGION 0x01000000
#define REGION_SIZE 0x40000

    .code32
    .section .text
    .globl _start
_start:
    cli
    mov $0x90000, %esp
    mov $0x9e3779b9, %esi          /* xorshift32 state */
    mov $msg_start, %ebx
    call puts
    mov $ROUNDS, %ebp
round:
    mov $0xd0000000, %edi
device:
    call setup_device
    mov $RANDOM_WRITES, %ecx
1:  call rand
    and $0xfc, %eax                /* any 32-bit register below the config space */
    push %eax
    call rand
    pop %edx
    mov %eax, (%edi,%edx)
    call rand                      /* and a byte read somewhere in the config space */
    and $0xff, %eax
    movb 0x100(%edi,%eax), %dl
    loop 1b
    add $0x1000, %edi
    cmp $(0xd0000000 + DEVICES * 0x1000), %edi
    jb device

    call scribble

    mov $0xd0000000, %edi
2:  movl $0, 0x50(%edi)            /* QueueNotify 0, 1, 2 */
    movl $1, 0x50(%edi)
    movl $2, 0x50(%edi)
    add $0x1000, %edi
    cmp $(0xd0000000 + DEVICES * 0x1000), %edi
    jb 2b

    dec %ebp
    jnz round

    mov $msg_end, %ebx
    call puts
    lidt empty_idt
    int3                            /* no IDT: #GP, #DF, triple fault -> reset */
    hlt

/* Status handshake and queue setup for the device at %edi. */
setup_device:
    movl $0, 0x70(%edi)            /* reset (ignored once active) */
    movl $1, 0x70(%edi)            /* ACKNOWLEDGE */
    movl $3, 0x70(%edi)            /* DRIVER */
    movl $0, 0x14(%edi)            /* DeviceFeaturesSel 0 */
    mov 0x10(%edi), %eax
    movl $0, 0x24(%edi)
    mov %eax, 0x20(%edi)           /* accept what is offered */
    movl $1, 0x14(%edi)
    mov 0x10(%edi), %eax
    movl $1, 0x24(%edi)
    mov %eax, 0x20(%edi)
    movl $0xb, 0x70(%edi)          /* FEATURES_OK */
    xor %ebx, %ebx
3:  mov %ebx, 0x30(%edi)           /* QueueSel */
    call rand
    and $0x1ff, %eax               /* QueueNum: often not a power of two */
    mov %eax, 0x38(%edi)
    call page
    mov %eax, 0x80(%edi)           /* QueueDescLow */
    movl $0, 0x84(%edi)
    call page
    mov %eax, 0x90(%edi)           /* QueueDriverLow */
    movl $0, 0x94(%edi)
    call page
    mov %eax, 0xa0(%edi)           /* QueueDeviceLow */
    movl $0, 0xa4(%edi)
    movl $1, 0x44(%edi)            /* QueueReady */
    inc %ebx
    cmp $3, %ebx
    jb 3b
    movl $0xf, 0x70(%edi)          /* DRIVER_OK */
    ret

/* %eax = a random page of the garbage region. */
page:
    call rand
    and $(REGION_SIZE - 1) & ~0xfff, %eax
    or $REGION, %eax
    ret

/* Fills the garbage region with descriptor-shaped noise. */
scribble:
    mov $REGION, %edi
4:  call rand
    and $0x00fffff0, %eax
    or $0x01000000, %eax
    mov %eax, (%edi)               /* addr low: 16..32 MiB */
    call rand
    cmp $0x20000000, %eax          /* 1/8: any high half */
    jb 5f
    xor %eax, %eax
5:  mov %eax, 4(%edi)
    call rand
    test $0x7, %al                 /* 1/8: any length */
    jz 6f
    and $0xffff, %eax
6:  mov %eax, 8(%edi)
    call rand
    and $0x001f0007, %eax          /* flags NEXT|WRITE|INDIRECT, next < 32 */
    mov %eax, 12(%edi)
    add $16, %edi
    cmp $(REGION + REGION_SIZE), %edi
    jb 4b
    mov $0xd0000000, %edi          /* restore the device pointer for the caller */
    ret

/* xorshift32: %esi = %eax = next value. */
rand:
    mov %esi, %eax
    shl $13, %eax
    xor %eax, %esi
    mov %esi, %eax
    shr $17, %eax
    xor %eax, %esi
    mov %esi, %eax
    shl $5, %eax
    xor %eax, %esi
    mov %esi, %eax
    ret

/* Writes the NUL-terminated string at %ebx to COM1. */
puts:
    mov $0x3f8, %dx
7:  movb (%ebx), %al
    test %al, %al
    jz 8f
    outb %al, %dx
    inc %ebx
    jmp 7b
8:  ret

    .section .rodata
msg_start: .asciz "GARBAGE-START\n"
msg_end:   .asciz "GARBAGE-END\n"
    .align 8
empty_idt: .word 0
           .long 0

/* The PVH entry point, for hull-vmm's loader (XEN_ELFNOTE_PHYS32_ENTRY). */
    .section .note.pvh, "a", @note
    .align 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long _start
