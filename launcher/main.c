#include "launcher/launcher.h"

int main(int argc, char **argv)
{
    return qvisor_main(argc, argv);
}
